import { serverUrls, skipUnlessReachable } from '../support/servers.ts'
import { defineReadSuite } from './read-suite.ts'

const suite = 'read path: Kafka + PostgreSQL + Redis'
const skip =
  (await skipUnlessReachable(suite, 'kafka')) ??
  (await skipUnlessReachable(suite, 'postgres')) ??
  (await skipUnlessReachable(suite, 'redis'))

defineReadSuite('distributed', skip, { MERCATO_CACHE: serverUrls.redis })
