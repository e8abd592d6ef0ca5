import t from 'tap'
import { CinderfsError } from '../../src/errors/errors.js'
import { CLEANUP_DEFERRED_MESSAGE, CLEANUP_DONE_MESSAGE, CLEANUP_LEFT_MESSAGE, Janitor } from '../../src/janitor/janitor.js'
import { capturingLogger } from '../helpers/openstack.js'

/** A step that fails `failures` times (with a Cinder-like error), then succeeds; records the order steps ran in. */
function flaky(order: string[], volumeId: string, call: string, failures: number) {
  let left = failures
  return {
    volumeId, call,
    run: async () => {
      order.push(`${call}:${left > 0 ? 'fail' : 'ok'}`)
      if (left-- > 0) throw new CinderfsError('EIO', 'DELETE /attachments/x: ECONNREFUSED', { requestId: 'req-1' })
    },
  }
}

async function until(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setImmediate(resolve))
  }
}

t.test('a failed step is retried with backoff until it succeeds; steps of one volume keep their order', async t => {
  const { logger, lines } = capturingLogger()
  const janitor = new Janitor({ logger, firstDelayMs: 5, maxDelayMs: 20 })
  const order: string[] = []
  await janitor.attempt(flaky(order, 'v1', 'detach', 3))
  // queued behind the pending detach: not even tried yet
  await janitor.attempt(flaky(order, 'v1', 'delete volume', 0))
  t.same(order, ['detach:fail'], 'the delete waits for the detach')
  t.equal(janitor.size, 2, 'two steps pending')
  t.same(janitor.list().map(p => p.call), ['detach', 'delete volume'])
  await until('all done', () => janitor.size === 0)
  t.same(order, ['detach:fail', 'detach:fail', 'detach:fail', 'detach:ok', 'delete volume:ok'])
  const deferred = lines.filter(l => l.includes(CLEANUP_DEFERRED_MESSAGE)).map(l => JSON.parse(l) as Record<string, unknown>)
  t.ok(deferred.length >= 3, 'each failure is one line')
  t.match(deferred[0], { volumeId: 'v1', call: 'detach', requestId: 'req-1', next: 'will retry' }, 'with the volume, the call, the request id and what happens next')
  t.equal(lines.filter(l => l.includes(CLEANUP_DONE_MESSAGE)).length, 2)
})

t.test('a step that needs another first (a delete its detach) gets it done in order, even when both fail for a while', async t => {
  const janitor = new Janitor({ logger: capturingLogger().logger, firstDelayMs: 5, maxDelayMs: 20 })
  const order: string[] = []
  const detach = flaky(order, 'v5', 'detach', 2)
  let detached = false
  const step = {
    volumeId: 'v5',
    call: 'delete volume',
    run: async () => {
      // as ImageLifecycle.delete does: detach through the janitor, then delete
      if (!detached) detached = await janitor.attempt({ ...detach, run: async () => { await detach.run() } })
      if (!detached) throw new CinderfsError('EIO', 'volume is still attached')
      order.push('delete volume:ok')
    },
  }
  await janitor.attempt(step)
  await until('all done', () => janitor.size === 0)
  t.equal(order.at(-1), 'delete volume:ok', 'the delete went through after its detach')
  t.ok(order.includes('detach:ok'))
})

t.test('a detach that fails while a delete of its volume waits goes before it', async t => {
  const janitor = new Janitor({ logger: capturingLogger().logger, firstDelayMs: 5, maxDelayMs: 20 })
  const order: string[] = []
  let attached = true
  await janitor.attempt({ volumeId: 'v6', call: 'delete volume', run: async () => {
    order.push(`delete volume:${attached ? 'fail' : 'ok'}`)
    if (attached) throw new CinderfsError('EBUSY', 'volume is in-use')
  } })
  // an idle detach of the same volume fails later (Cinder still down)
  const detach = flaky(order, 'v6', 'detach', 1)
  await janitor.attempt({ ...detach, first: true, run: async () => { await detach.run(); attached = false } })
  t.same(janitor.list().map(p => p.call), ['detach', 'delete volume'], 'the detach is first in line')
  await until('all done', () => janitor.size === 0)
  t.equal(order.at(-1), 'delete volume:ok')
})

t.test('runNow tries a volume\'s pending steps at once', async t => {
  const janitor = new Janitor({ logger: capturingLogger().logger, firstDelayMs: 60_000 })
  const order: string[] = []
  await janitor.attempt(flaky(order, 'v2', 'detach', 1))
  t.equal(janitor.size, 1)
  await janitor.runNow('v2')
  t.equal(janitor.size, 0, 'done without waiting for the minute-long backoff')
})

t.test('drain is bounded and logs each step left, one line each', async t => {
  const { logger, lines } = capturingLogger()
  const janitor = new Janitor({ logger, firstDelayMs: 5 })
  const order: string[] = []
  await janitor.attempt(flaky(order, 'v3', 'delete volume', Infinity))
  await janitor.attempt(flaky(order, 'v4', 'detach', 1))
  const started = Date.now()
  const left = await janitor.drain(200)
  t.ok(Date.now() - started < 2000, 'returns within the bound')
  t.equal(left, 1, 'the step that could be done was done; one is left')
  const leftLines = lines.filter(l => l.includes(CLEANUP_LEFT_MESSAGE))
  t.equal(leftLines.length, 1)
  t.match(JSON.parse(leftLines[0] ?? '{}'), { volumeId: 'v3', call: 'delete volume' })
  const tried = order.length
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(order.length, tried, 'nothing runs after the stop')
})

t.test('at stop, a step Cinder refuses (another host holds the volume) is given up after a short grace, not the whole window', async t => {
  const { logger, lines } = capturingLogger()
  const janitor = new Janitor({ logger, firstDelayMs: 5, refusedGraceMs: 50 })
  let attempts = 0
  await janitor.attempt({
    volumeId: 'v5', call: 'delete volume',
    run: async () => {
      attempts++
      throw new CinderfsError('EBUSY', 'DELETE /volumes/v5: 400 Invalid volume: Volume status must be available', { status: 400, requestId: 'req-2' })
    },
  })
  const started = Date.now()
  t.equal(await janitor.drain(60_000), 1, 'the refused step is left for recovery')
  t.ok(Date.now() - started < 30_000, 'the stop does not wait out the minute')
  t.ok(attempts > 1, 'it was tried again before giving up')
  t.equal(lines.filter(l => l.includes(CLEANUP_LEFT_MESSAGE)).length, 1, 'and logged as left')
})
