"""The loops: collect, train the world model, SFT, RL, evaluate (Ray lives here and in workers)."""
