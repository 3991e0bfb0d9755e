// extern "C" face of the Verilated amf_card (see src/card.rs).
#include <cstdint>
#include "Vamf_card.h"
#include "verilated.h"

extern "C" {

struct amf_cd_io {
    // inputs
    uint8_t rst_n;
    uint8_t reg_req_valid;
    uint8_t reg_req_write;
    uint8_t dma_req_ready;
    uint8_t dma_rsp_valid;
    uint8_t dma_rsp_error;
    uint8_t link_rx_valid;
    uint8_t link_tx_ready;
    uint16_t reg_req_addr;
    uint16_t pad0;
    uint32_t reg_req_wdata;
    uint32_t dma_rsp_rdata[8];
    uint32_t link_rx_frame[12];
    // outputs
    uint8_t reg_rsp_valid;
    uint8_t dma_req_valid;
    uint8_t dma_req_write;
    uint8_t dma_req_bytes;
    uint8_t link_rx_ready;
    uint8_t link_tx_valid;
    uint8_t irq;
    uint8_t busy;
    uint8_t active;
    uint32_t reg_rsp_rdata;
    uint64_t dma_req_addr;
    uint32_t dma_req_wdata[8];
    uint32_t link_tx_frame[12];
};

struct amf_cd {
    VerilatedContext ctx;
    Vamf_card* top;
};

void* amf_cd_new() {
    auto* s = new amf_cd;
    s->ctx.threads(1);
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_card{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_cd_free(void* p) {
    auto* s = static_cast<amf_cd*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

void amf_cd_cycle(void* p, amf_cd_io* io) {
    auto* s = static_cast<amf_cd*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->reg_req_valid_i = io->reg_req_valid;
    t->reg_req_write_i = io->reg_req_write;
    t->reg_req_addr_i = io->reg_req_addr;
    t->reg_req_wdata_i = io->reg_req_wdata;
    t->dma_req_ready_i = io->dma_req_ready;
    t->dma_rsp_valid_i = io->dma_rsp_valid;
    t->dma_rsp_error_i = io->dma_rsp_error;
    for (int i = 0; i < 8; i++) t->dma_rsp_rdata_i[i] = io->dma_rsp_rdata[i];
    t->link_rx_valid_i = io->link_rx_valid;
    for (int i = 0; i < 12; i++) t->link_rx_frame_i[i] = io->link_rx_frame[i];
    t->link_tx_ready_i = io->link_tx_ready;
    // The falling edge of the previous cycle and the settling of this cycle's inputs share one
    // eval (nothing in the RTL is sensitive to the falling edge): two evals per cycle, not three.
    t->clk_i = 0;
    t->eval();
    io->reg_rsp_valid = t->reg_rsp_valid_o;
    io->reg_rsp_rdata = t->reg_rsp_rdata_o;
    io->dma_req_valid = t->dma_req_valid_o;
    io->dma_req_write = t->dma_req_write_o;
    io->dma_req_bytes = t->dma_req_bytes_o;
    io->dma_req_addr = t->dma_req_addr_o;
    for (int i = 0; i < 8; i++) io->dma_req_wdata[i] = t->dma_req_wdata_o[i];
    io->link_rx_ready = t->link_rx_ready_o;
    io->link_tx_valid = t->link_tx_valid_o;
    for (int i = 0; i < 12; i++) io->link_tx_frame[i] = t->link_tx_frame_o[i];
    io->irq = t->irq_o;
    io->busy = t->busy_o;
    io->active = t->active_o;
    t->clk_i = 1;
    t->eval();
}

}
