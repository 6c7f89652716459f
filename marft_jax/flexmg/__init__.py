"""Flex-MG: agent profiles, the dependency function D as a graph of waves, and the game."""
