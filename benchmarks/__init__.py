"""Benchmarks: speed figures measured against a baseline in the same run (`concept-talker bench`)."""
