"""Moving weights between lmforge and other libraries' formats (state-dict adapters)."""
