import { KafkaStream, kafkaStreamDefaults } from '../../../src/engines/stream/kafka/kafka-stream.ts'
import { serverUrls, skipUnlessReachable } from '../../support/servers.ts'
import { defineStreamConformance } from './conformance.ts'

const suite = 'stream port conformance: Kafka'
const skip = await skipUnlessReachable(suite, 'kafka')

defineStreamConformance('Kafka', skip, async ({ queueLengthMax }) => ({
  engine: new KafkaStream({
    ...kafkaStreamDefaults,
    brokers: [serverUrls.kafka],
    clientId: 'mercato-test',
    sessionTimeoutMs: 6_000,
    heartbeatIntervalMs: 500,
    ...(queueLengthMax ? { publishQueueLengthMax: queueLengthMax } : {}),
  }),
  takeoverTimeoutMs: 6_000,
}))
