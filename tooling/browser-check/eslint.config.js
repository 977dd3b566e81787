export { default } from '@lora-internal/eslint-config';
