#!/usr/bin/env node
// Runs the TypeScript entry through tsx's loader, so `npx tenantd serve` works
// from a checkout without a build step.
import { register } from 'tsx/esm/api';

register();
await import('../src/main.ts');
