"""The benchmark's pure parts: verdicts and tables, without services or a broker."""
