"""The jobs behind `regenesis evaluate` and `regenesis synthesize`: typed, documented functions whose
signatures are the commands' config schemas (read by ``regenesis_pl.cli``)."""
