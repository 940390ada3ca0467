"""Weight layouts of other frameworks' releases: RobustBench / DeepMind classifiers."""
