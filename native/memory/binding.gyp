{
  "targets": [{
    "target_name": "cinderfs_memory",
    "sources": ["memory.c"],
    "cflags": ["-O2", "-Wall", "-Wextra"]
  }]
}
