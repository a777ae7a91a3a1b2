"""The site configuration: pydantic models, loading with file:line:col errors, the regional calendar."""
