{
  "targets": [{
    "target_name": "cinderfs_fuse",
    "include_dirs": [
      "<!(node -p \"require('path').dirname(require.resolve('napi-macros/package.json'))\")",
      "<!(node -p \"require('fuse-shared-library-linux').include\")"
    ],
    "libraries": ["-l:libfuse.so.2"],
    "sources": ["shim.c"],
    "cflags": ["-iquote<!(node -p \"require('path').dirname(require.resolve('fuse-native/fuse-native.c'))\")", "-O2", "-Wall"]
  }]
}
