import t from 'tap'
import { randomFile, startDaemon, workspace, needsBackend } from '../helpers/daemon.js'
import { run, sha256 } from '../helpers/shell.js'

const MiB = 1024 * 1024

t.test('4 concurrent cp and 8 concurrent cat of different and the same files', { skip: needsBackend() }, async t => {
  const ws = await workspace(t)
  const daemon = await startDaemon(ws, ['--cache-size', '64M', '--readahead', '8M'])
  const sources = await Promise.all([9 * MiB + 1, 17 * MiB, 33 * MiB - 5, 40 * MiB].map(async size => randomFile(size)))
  const copies = await Promise.all(sources.map(async (source, i) => run(`cp '${source}' '${daemon.file(`f${i}`)}'`)))
  t.same(copies.map(c => c.code), [0, 0, 0, 0], 'all four cp succeed')
  // Two readers per file, all at once, through a cache smaller than the data.
  const readers = await Promise.all([0, 1, 2, 3, 0, 1, 2, 3].map(async i => run(`cat '${daemon.file(`f${i}`)}' | sha256sum`)))
  const expected = await Promise.all(sources.map(async source => sha256(source)))
  readers.forEach((reader, n) => t.equal(reader.stdout.split(' ')[0], expected[n % 4], `reader ${n} of f${n % 4}: sha256 equal`))
  const same = await Promise.all(Array.from({ length: 8 }, async () => run(`cat '${daemon.file('f3')}' | sha256sum`)))
  t.ok(same.every(r => r.stdout.split(' ')[0] === expected[3]), '8 readers of one file: all sha256 equal')
})
