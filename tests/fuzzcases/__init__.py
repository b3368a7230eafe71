"Fuzz cases, one file per group of modules: each defines `CASES` (a list of `helpers.Case`) and `EXEMPT` (name -> reason)."
