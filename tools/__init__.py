"""Development and operations tools: launcher, local database, synthetic data, test servers."""
