"""Packed datasets: a file dataset rewritten as a few large shard files of pre-resized images plus an index.
pack writes one (`deepres data pack`); packed_reader defines the layout and reads it back for the loaders
(data.name: packed). Nothing is re-exported: pack builds on deepres.data.datasets, which reads packs."""
