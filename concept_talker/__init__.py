"""Everything for training Concept-Talker: synthetic data, collators, Trainer subclasses, metrics, and the
`concept-talker` command line."""
