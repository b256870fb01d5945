"""DUSqueue (F-06): agents and star codes, live queue control on both engines,
statistics from the engines' queue events."""
