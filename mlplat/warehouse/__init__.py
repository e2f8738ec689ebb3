"""The warehouse: everything that is not a model file, in one DuckDB database owned by this process.

store.py is the service (Warehouse: reads, start/stop); writer.py the single-writer actor and its commands;
schema.py the migrations; query_guard.py what a user query may do; cache.py the shared query cache.
"""
