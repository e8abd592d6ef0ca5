{
  "targets": [{
    "target_name": "cinderfs_fuse3",
    "sources": ["fuse3.c"],
    "cflags": ["<!@(pkg-config --cflags fuse3)", "-O2", "-Wall", "-Wextra"],
    "libraries": ["<!@(pkg-config --libs fuse3)"]
  }]
}
