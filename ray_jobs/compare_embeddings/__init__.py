"""Compare the audio and symbolic embedding spaces of the same recordings, with statistics."""
