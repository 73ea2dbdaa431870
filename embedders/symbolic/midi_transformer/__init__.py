"""The project's own MIDI transformer: tokenizer (MidiTok REMI+BPE), chunking, encoder model, embedder.

Model, tokenizer and chunking live here, beside the embedder that uses them, so that `training`
(which pretrains the model) imports `embedders` and never the reverse.
"""
