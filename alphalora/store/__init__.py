"""The run store (SQLite): every fine-tune run and its metrics. A foundation every stage may
write to; it imports nothing but :mod:`alphalora.errors` and :mod:`alphalora.paths`."""
