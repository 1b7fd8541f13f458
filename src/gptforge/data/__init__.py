"""Data: raw text -> token shards (prepare), shard dirs (shards), batches (loader, collate).

from gptforge.data.shards import open_dataset
from gptforge.data.loader import BatchLoader
"""
