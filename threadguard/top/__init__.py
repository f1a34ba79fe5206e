"""`threadguard top`: every guarded process on the node, its threads by
library, live (internal: the command's modules)."""
