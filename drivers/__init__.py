"""Device I/O: Modbus transports, register maps as data, device kinds, simulators."""
