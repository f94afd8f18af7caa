"""The ReGenesis method and baselines as plain functions over typed records; the engine is passed in.

Entry point: ``synthesis.synthesize_round(engine, questions, SynthesisConfig(...), round)``. The parts, in
data-flow order: ``guidelines`` (seed data) -> ``prompts`` -> ``regenesis`` (adapt, structure, path stages)
or ``baselines`` (STaR, LMSI, GT-SFT) -> ``filters`` -> ``stats``. Nothing is imported here, so that
``regenesis_pl.method.records`` stays importable from anywhere without import cycles.
"""
