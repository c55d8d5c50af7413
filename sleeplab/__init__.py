"""Sleep Lab Monitor: the API, its storage and the CPAP analysis behind the entry points."""
