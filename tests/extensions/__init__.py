"""Parts registered from outside the simlab package (instruments, analyses, endpoint kinds), as a user would."""
