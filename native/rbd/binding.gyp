{
  "targets": [{
    "target_name": "cinderfs_rbd",
    "sources": ["rbd.c"],
    "libraries": ["-lrbd", "-lrados"],
    "cflags": ["-O2", "-Wall", "-Wextra"]
  }]
}
