"""The prediction log: one structured record per prediction, of every endpoint and device.

`writer` (what the serving path uses: no database import, so a model image can carry it) and
`query` (reading, paging, export) are imported from their modules.
"""
