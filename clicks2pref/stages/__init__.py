"""One entry per pipeline stage; each reads inputs, calls library code and writes outputs atomically."""
