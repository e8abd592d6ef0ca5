{
  "targets": [{
    "target_name": "cinderfs_rbd",
    "sources": ["rbd.c"],
    "include_dirs": ["../common"],
    "libraries": ["-lrbd", "-lrados"],
    "cflags": ["-O2", "-Wall", "-Wextra"]
  }]
}
