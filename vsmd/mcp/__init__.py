"""MCP over the tree's exchange: every VSM an MCP server, anyone with authority a client.

The `mcp` SDK is imported only by the modules of this package (and by what the fork server
prewarms), never by vsmctl's `list`, `spawn` or `terminate`. docs/mcp.md has the wire format.
"""
