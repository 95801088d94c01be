import { defineReadSuite } from './read-suite.ts'

defineReadSuite('embedded', undefined)
