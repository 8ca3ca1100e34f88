/* ST NUCLEO-F411RE: HSI 16 MHz -> PLL 84 MHz, USART2 (PA2 TX / PA3 RX, AF7) at 115200 baud
 * on the ST-Link virtual COM port, DWT CYCCNT as the cycle counter. Register level: the few
 * registers below are all the server needs (RM0383). */
#include "board.h"

#define REG(a) (*(volatile uint32_t *)(a))
#define RCC 0x40023800u
#define RCC_CR REG(RCC + 0x00)
#define RCC_PLLCFGR REG(RCC + 0x04)
#define RCC_CFGR REG(RCC + 0x08)
#define RCC_AHB1ENR REG(RCC + 0x30)
#define RCC_APB1ENR REG(RCC + 0x40)
#define FLASH_ACR REG(0x40023C00u)
#define GPIOA 0x40020000u
#define GPIOA_MODER REG(GPIOA + 0x00)
#define GPIOA_AFRL REG(GPIOA + 0x20)
#define USART2 0x40004400u
#define USART_SR REG(USART2 + 0x00)
#define USART_DR REG(USART2 + 0x04)
#define USART_BRR REG(USART2 + 0x08)
#define USART_CR1 REG(USART2 + 0x0C)
#define DEMCR REG(0xE000EDFCu)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define APB1_HZ 42000000u
#define BAUD 115200u

static void clock_84mhz(void)
{
    FLASH_ACR = (1u << 8) | (1u << 9) | (1u << 10) | 2u;     /* prefetch, I/D cache, 2 wait states */
    /* PLLM=16 (1 MHz in), PLLN=336, PLLP=/4 -> 84 MHz, PLLQ=7, source HSI */
    RCC_PLLCFGR = 16u | (336u << 6) | (1u << 16) | (7u << 24);
    RCC_CR |= 1u << 24;                                        /* PLLON */
    while (!(RCC_CR & (1u << 25))) {
    }
    RCC_CFGR = (RCC_CFGR & ~0xFCF3u) | (4u << 10);              /* AHB /1, APB1 /2, APB2 /1 */
    RCC_CFGR = (RCC_CFGR & ~3u) | 2u;                           /* SYSCLK = PLL */
    while (((RCC_CFGR >> 2) & 3u) != 2u) {
    }
}

void board_init(void)
{
    clock_84mhz();
    RCC_AHB1ENR |= 1u;                                          /* GPIOA */
    RCC_APB1ENR |= 1u << 17;                                    /* USART2 */
    GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 4)) | (0xAu << 4);   /* PA2, PA3 alternate */
    GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFu << 8)) | (0x77u << 8);   /* AF7 = USART2 */
    USART_BRR = (APB1_HZ + BAUD / 2u) / BAUD;
    USART_CR1 = (1u << 13) | (1u << 3) | (1u << 2);             /* UE, TE, RE */
    board_counter_start();
}

void board_counter_start(void)
{
    DEMCR |= 1u << 24;                                          /* TRCENA */
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;
}

uint32_t board_counter_now(void) { return DWT_CYCCNT; }

int board_getc(void)
{
    uint32_t sr = USART_SR;
    if (sr & (1u << 3)) (void)USART_DR;                         /* overrun: drop, the CRC catches it */
    if (!(sr & (1u << 5))) return -1;
    return (int)(USART_DR & 0xFFu);
}

void board_write(const uint8_t *p, size_t n)
{
    while (n--) {
        while (!(USART_SR & (1u << 7))) {
        }
        USART_DR = *p++;
    }
}

uint32_t board_counter_begin(void) { return DWT_CYCCNT; }
uint32_t board_counter_end(uint32_t begin) { return DWT_CYCCNT - begin; }
