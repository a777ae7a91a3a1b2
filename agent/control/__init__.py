"""Closing the loop: the controller's decisions and the actuator (journal, write, read back)."""
