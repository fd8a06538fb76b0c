"""Sans-I/O parsers of kernel wire formats; their only exception is WireError."""
