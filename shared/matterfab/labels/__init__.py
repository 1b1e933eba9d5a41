"""Device labels: a layout declared once, placed once, rendered as ZPL, PDF sheets or PNG.

`layout` holds the model a work order declares (`label`) and the placement every renderer
shares (`place`: positions in printer dots), so the three formats show the same label; `zpl`,
`pdf` and `png` only draw what `place` decided. Pure and synchronous: no I/O here.
"""
