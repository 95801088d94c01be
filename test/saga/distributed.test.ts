import { skipUnlessReachable } from '../support/servers.ts'
import { defineSagaSuite } from './saga-suite.ts'

const skip =
  (await skipUnlessReachable('order saga: Kafka + PostgreSQL', 'kafka')) ??
  (await skipUnlessReachable('order saga: Kafka + PostgreSQL', 'postgres'))

defineSagaSuite('distributed', skip)
