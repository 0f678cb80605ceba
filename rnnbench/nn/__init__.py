"""The networks: the cells' equations (cells; their registry is rnnbench.cellspec), the models
built on them (model: a sequence model; encoder_decoder; packed: K models as one), the one
gradient clipping (clipping) and decoding (decode). Plain torch: nothing here imports the run
or results layers (tests/test_layout.py)."""
