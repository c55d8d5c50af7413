"""Reading and analysing CPAP recordings."""
