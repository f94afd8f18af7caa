"""One self-improvement round's data: the orchestrator that synthesizes a round into its files
(``synthesize.py``), the generation store it writes through (``store.py``) and the engine that answers from that
store (``cached_engine.py``), and the SFT records made from the kept paths (``sft_records.py``)."""
