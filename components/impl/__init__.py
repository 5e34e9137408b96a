"""Plain-Python step code behind the KFP components (no kfp import; see components/__init__.py)."""
