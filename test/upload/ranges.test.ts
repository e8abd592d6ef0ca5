import t from 'tap'
import { addRange, type Range } from '../../src/upload/ranges.js'

function ranges(...pairs: Array<[number, number]>): Range[] {
  const out: Range[] = []
  for (const [from, to] of pairs) addRange(out, from, to)
  return out
}

t.test('what a window holds: sorted, disjoint, merged', async t => {
  t.same(ranges([0, 10], [10, 20]), [{ from: 0, to: 20 }], 'adjacent writes merge (a sequential writer is one range)')
  t.same(ranges([30, 40], [0, 10]), [{ from: 0, to: 10 }, { from: 30, to: 40 }], 'a hole stays a hole, ranges stay sorted')
  t.same(ranges([0, 10], [30, 40], [5, 35]), [{ from: 0, to: 40 }], 'a rewrite across ranges joins them')
  t.same(ranges([0, 10], [30, 40], [12, 20]), [{ from: 0, to: 10 }, { from: 12, to: 20 }, { from: 30, to: 40 }])
  t.same(ranges([10, 20], [12, 15]), [{ from: 10, to: 20 }], 'a rewrite inside a range changes nothing')
  t.same(ranges([10, 20], [5, 5]), [{ from: 10, to: 20 }], 'an empty write adds nothing')
})
