"""The bundled sample (sample.parquet), how it was built, and a corpus made from it."""
