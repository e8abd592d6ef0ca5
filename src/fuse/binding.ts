import Module from 'node:module'
import path from 'node:path'
import nodeGypBuild from 'node-gyp-build'
import type FuseClass from 'fuse-native'

// Loads fuse-native with our shim (native/fuse-shim) in place of its prebuilt
// addon. The shim is fuse-native's own C source with three operations wrapped
// (see shim.c); the JS half of fuse-native is used as published. We seed
// require's cache at the path fuse-native would load, so nothing in
// node_modules is changed.
export function loadFuse(): typeof FuseClass {
  const shimPath = path.join(__dirname, '..', '..', '..', 'native', 'fuse-shim', 'build', 'Release', 'cinderfs_fuse.node')
  const fuseNativeDir = path.dirname(require.resolve('fuse-native/package.json'))
  const prebuiltPath = nodeGypBuild.path(fuseNativeDir)
  const cache = require.cache
  if (cache[prebuiltPath] === undefined) {
    const shim = new Module(prebuiltPath)
    shim.filename = prebuiltPath
    shim.exports = require(shimPath)
    shim.loaded = true
    cache[prebuiltPath] = shim
  }
  const loaded: { default?: typeof FuseClass } & typeof FuseClass = require('fuse-native')
  return loaded.default ?? loaded
}
