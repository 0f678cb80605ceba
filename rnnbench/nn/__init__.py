"""The networks: the cells' equations and their registry (cells, cellspec), the models built
on them (model: a sequence model; encoder_decoder; packed: K models as one), the one gradient
clipping (clipping) and decoding (decode). Plain torch: nothing here imports the run or results
layers (tests/test_layout.py)."""
