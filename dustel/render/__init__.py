"""DB -> template context -> engine files (SPEC F-10).

``context.gather`` reads everything in a few sorted queries into plain data;
``freeswitch`` and ``asterisk`` hold one generator per output file;
``writer`` writes atomically and only what changed."""
