"""The SQLite ledger: schema and migrations, the batching writer, and the queries behind reports."""
