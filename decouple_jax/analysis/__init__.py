"""The paper's analyses (PAPER.md section 6): diversity and search compute scaling."""
